# Lets pytest's doctest collection import the top-level packages from the project root.

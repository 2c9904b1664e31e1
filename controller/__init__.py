"""The controller: decide each sequence's allocation from its prompt alone, learned from oracle runs."""

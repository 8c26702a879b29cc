"""Helpers shared by the test modules: the scripted head harness, polling."""

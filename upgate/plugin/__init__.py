"""The pytest plugin the gates run under: options, fixtures, the results file the wrapper reads."""

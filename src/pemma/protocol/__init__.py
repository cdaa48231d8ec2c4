"""The reproduction protocol's pure parts: strategy files and splits, the results table, report and figures."""

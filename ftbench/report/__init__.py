"""Reports: statistics of paired comparisons, tables and plots built from results files."""

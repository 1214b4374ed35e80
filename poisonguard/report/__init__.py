"""Report: the JSON and HTML report of each scan and the figures in them."""

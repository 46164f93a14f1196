"""Oracle diagnosis of the instance pseudo-labels: which upstream input loses the quality."""

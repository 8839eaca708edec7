"""What a measured number means (``MeasureSpec``) and the one recipe that measures it."""

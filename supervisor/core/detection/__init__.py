"""Detection: every way a runner's end is noticed, registered in one list (`registry`)."""

"""skiporacle.oracle"""

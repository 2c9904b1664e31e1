"""skiporacle.eval"""

"""skiporacle.search"""

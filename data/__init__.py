"""skiporacle.data"""

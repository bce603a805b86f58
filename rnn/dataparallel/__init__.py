"""dataparallel"""

"""retrieval_bio.index"""

"""retrieval_bio.eval"""

"""retrieval_bio.rules"""

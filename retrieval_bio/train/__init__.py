"""retrieval_bio.train"""

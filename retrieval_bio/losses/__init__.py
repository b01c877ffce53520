"""retrieval_bio.losses"""

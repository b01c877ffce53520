"""retrieval_bio.attacks"""

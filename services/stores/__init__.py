"""Store adapters shared by every service: S3 objects (s3.py) and MongoDB (mongo.py)."""

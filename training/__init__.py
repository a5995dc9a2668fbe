"""ArtLens offline training job: python -m training --data <folder> (make train DATA=...)."""

"""The embed stage: list the images, plan what changed, fetch and decode, run the CNN."""

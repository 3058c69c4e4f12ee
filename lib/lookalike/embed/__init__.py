"""The embed stage: image files in, one embedding or one error row per image out.

listing.py    list input.uri (through lookalike.io) and turn keys into item ids
manifest.py   input.manifest: the keys read from a table (S3 Inventory) by the executors
plan.py       incremental runs: what to embed, what to carry over from the previous table
images.py     bytes -> RGB pixels at the model's input size, or a precise reason why not
backbones.py  the CNNs: input size, preprocessing, output size, where ImageNet weights come from
preprocessing.py  the normalisations (caffe, torch, tf, raw) in NumPy and as a Keras layer
checksums.py  the md5 of a weights file, once per file version
weights.py    weights sources (Keras download, pip package, file, s3://), md5 checks, the offline fallback
pth.py        a reader for legacy PyTorch checkpoints, without PyTorch
efficientnet_lite.py  EfficientNet-Lite0/1/2 in Keras, and their checkpoints converted once per host
kerashub.py   KerasHub presets (CLIP, SigLIP, DINOv2): fetched once per host, their image tower and converter
backend.py    which Keras backend runs the models
openvino/     OpenVINO as the CPU runtime: conversion, per-host IR cache, compiled models
hardware.py   what the executors can do: precision and runtime for ``auto``
model.py      Embedder.embed(batch) -> array: the backbone with its preprocessing, loaded once per worker
stage.py      the Spark stage (mapInPandas): fetch, decode on a thread pool, embed, one row each

lookalike.jobs.embed runs them in this order.
"""

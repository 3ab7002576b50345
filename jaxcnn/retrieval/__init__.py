"""Text search over the images and video keyframes of a folder with an image-text model (CLIP, SigLIP).

`python -m jaxcnn.retrieval index|query` (see __main__.py). Rooms: frames.py (finding files, decoding,
keyframes and shot changes), encoder.py (the model, image preparation, jitted sharded embedding),
build.py (an index from a folder), store.py (the index directory), search.py (top-k, contact sheet).
"""

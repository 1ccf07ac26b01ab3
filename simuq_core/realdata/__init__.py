"""A lab's own raw SIM acquisitions: reading, checking, normalising, cropping, measuring.

- :mod:`.reader`: ``read_acquisition`` (TIFF / OME-TIFF / MRC / DV → ``(T, F, H, W)`` frames, pixel size);
- :mod:`.checks`: ``InputError`` and the input checks (layout, values, frame order);
- :mod:`.normalise`: ``normalise``, ``Normalisation``, ``frame_gains``, ``resolve_offset``;
- :mod:`.crops`: ``index_acquisitions`` and ``CropStream`` (training crops streamed from files);
- :mod:`.holdout`: ``split_regions`` (held-out files, or strips with structure) for GT-free validation;
- :mod:`.measure`: ``measure_acquisition`` (pattern, photon transfer, background) for a matched simulation.
"""

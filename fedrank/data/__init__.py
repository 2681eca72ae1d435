"""fedrank's data layer: HF ``datasets`` in, Flower Datasets' partitioners, typed splits out.

- :mod:`fedrank.data.source`: ``DataSource`` and ``load_data`` / ``load_image_data`` /
  ``load_text_data`` (packaged sets and the user's files, validated, cached per process);
- :mod:`fedrank.data.partitioners`: ``PartitionSpec`` and ``partition_labels`` (iid,
  dirichlet, pathological, shard);
- :mod:`fedrank.data.federation`: ``partitions_for``, ``image_partition``, ``text_partition``
  (one client's training examples, the partition computed once per process);
- :mod:`fedrank.data.site`: ``load_site_data`` (a deployed site's ``data-path``);
- :mod:`fedrank.data.splits`: ``ImageSplit``, ``TextSplit``, ``ImageData``, ``TextData``.

``digits``, ``text``, ``local`` and ``partition`` are the former modules, kept for their callers.
"""

"""Data preparation for LLM-ESR: raw data -> RecBole atomic files -> LLM embeddings -> similar users.

Modules: :mod:`.readers` (raw formats, filters, atomic files), :mod:`.text` (item and user texts),
:mod:`.embedders` (offline and OpenAI embedders, the embedding cache), :mod:`.retrieval` (similar users),
:mod:`.artifacts` (the files beside a dataset), :mod:`.settings` (:class:`~.settings.PrepareSettings`),
:mod:`.inputs` (sources and default filters), :mod:`.freshness` (manifest checks and the build lock),
:mod:`.pipeline` (:func:`~.pipeline.prepare`) and :mod:`.from_config` (the RecBole-config adapter).

This package imports nothing from the plugin's models, config or registry: the runner calls into it.
"""

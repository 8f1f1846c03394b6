"""Cost control's pure core: what one scan of the cluster saw (``inventory``), which GPUs sit idle
and since when (``idle``), what the report and the digest say (``report``, ``digest``).

Nothing here does I/O: ``provisioning`` takes the inventory and stores the observations, ``bot``
posts the messages; both hand plain data in and get plain data back.
"""

"""diffagent: choose a text-to-image model, LoRAs and settings for a prompt, then render it.

Data flows one way: prompt -> candidates (``registry``) -> choice (``agent``) ->
``ApiCall`` (``apicall``) -> image (``render``) -> score (``scoring``).
"""

__version__ = "0.1.0"

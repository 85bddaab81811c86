"""lstm-serve: the serving side. Never imports torch.

The request path reads top to bottom: ``routes`` -> ``protocol`` (decode) -> ``batcher`` ->
``runtime`` -> ``protocol`` (encode); ``contract`` defines the artifact both sides agree on.
"""

__version__ = "0.1.0"

"""Model files: a trained network as one self-describing file (architecture, arguments, preprocessing, labels,
weights), loadable with ``weights_only=True``, and its fingerprint.

Takes in: a zoo architecture and its weights. Gives out: ``model.pt`` files and :class:`ModelSpec` descriptions
that teachers, students, export and prediction all read.
"""

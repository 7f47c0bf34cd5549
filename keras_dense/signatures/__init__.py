"""In-graph serving signatures: image bytes in, checked and budgeted; class maps or boxes out.

Stock TensorFlow ops only, so they run in TF Serving. The export driver
(`keras_dense.export`) asks the model's task for its signatures, which are built here.
"""

"""Data: TFRecord schema, converters and tf.data pipelines."""

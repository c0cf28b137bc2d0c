"""K-Means on Spark: estimators (MLlib / spark-rapids-ml), features, distances, k selection."""

"""The methods, each a module on top of ``snnl.runs``.

- ``agarap``: Agarap & Azcarraga's experiment (``snnl run``): train, encode the test set, k-means;
- ``n2d``: N2D (``snnl n2d``): autoencoder, manifold, Gaussian mixture;
- ``snapshots``: N2D's metrics on the way through training (``snnl snapshots``).
"""

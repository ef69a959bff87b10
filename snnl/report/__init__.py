"""What is shown to people (the last step of the data flow).

- ``tables``: the Markdown tables of finished runs (``snnl table``);
- ``figures``: a run's PNG figures and the fewer-labels study;
- ``backends``: which implementation each step uses on this machine (``snnl backends``).
"""

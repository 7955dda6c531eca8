"""Engine-free primitives that everything running a job stands on.

- ``_prompt``: templates over columns -> chat messages (and their checks);
- ``_schema``: the output columns and their fixed dtypes;
- ``_structured``: ``output=`` schemas -> typed columns, answer validation;
- ``_tokens``: the offline token estimate;
- ``_dedup``: identical requests sent once;
- ``_store``: whole-file atomic reads, writes and conditional creates on any
  fsspec storage (the checkpoint, the response cache and the command line use it).

May import: ``_config``, ``_errors``, pandas, pyarrow, fsspec. Nothing here
makes a call, knows a budget, or knows an engine.
"""

"""The presets: one YAML config per algorithm, shipped with the package as ``rlloom.presets``
and resolved by name (``rlloom train grpo``). The first comment line of each is the command
that runs it; the next is its one-line description (``rlloom presets``)."""

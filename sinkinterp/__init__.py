"""sinkinterp: measure, intervene on and explain attention sinks in language models.

Main entry points:

* ``sinkinterp.measure.measure(model, tokens)``: Sink_k^eps, per-head alpha, eps sweep, norms, q.k;
* ``sinkinterp.loading.load_model(spec)``: a built-in model, a Hugging Face folder, a GGUF file or a
  sinkinterp checkpoint, offline;
* ``sinkinterp.inputs.make_tokens(kind, ...)``: natural / random / repeated-token / copied-half inputs.
"""

__version__ = "0.1.0"

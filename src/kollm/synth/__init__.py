"""Training data built through an LLM endpoint: small steps (translate, answer, self_instruct,
evolve, doc_qa, back_translate, preference) and the pipeline that runs a recipe's `synth`."""

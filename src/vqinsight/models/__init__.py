"""Models: the tiny offline Qwen2.5-VL builder (`tiny`) and the judge loader with clear offline errors (`load`)."""

"""Runtime: devices and dtypes, the one model loader and writer, memory estimates, batch sizes, CPU tuning, output
folders, int8 and execution backends. Import from the modules (`aaclip_hf.runtime.loading`, ...)."""

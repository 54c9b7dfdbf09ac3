// placeholder (models issue)

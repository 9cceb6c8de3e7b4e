"""``img2mesh serve``: the pipeline behind an HTTP API and a web page, the model loaded and warmed once.

The pieces: :mod:`~img2mesh.serve.store` (jobs in SQLite, what survives a restart), :mod:`~img2mesh.serve.options`
(a job's options checked like config keys), :mod:`~img2mesh.serve.worker` (the batch runner fed from the queue),
:mod:`~img2mesh.serve.files` (what a job offers for download), :mod:`~img2mesh.serve.app` (the FastAPI app and the
page in ``static/``). ``img2mesh serve`` (:mod:`img2mesh.commands.serve`) starts them under uvicorn; from Python::

    import uvicorn
    from img2mesh.serve.app import ServeSettings, create_app

    uvicorn.run(create_app(ServeSettings(root=Path("jobs"))), host="127.0.0.1", port=8000)

Needs the ``serve`` extra (``pip install 'img2mesh[serve]'``: FastAPI, uvicorn, python-multipart).
"""

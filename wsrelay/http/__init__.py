"""wsrelay's HTTP/1.1 engine: the client-side channel (``channel``; the calls twisted.web's request
makes on it, ``webchannel``), the pure rules it applies to request heads (``rules``), and the
twisted.web request it hands each request to (``request``)."""

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker("wsrelay", "wsrelay.tap", "WebSocket-aware reverse proxy", "wsrelay")

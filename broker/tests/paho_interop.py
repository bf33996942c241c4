"""Interop check with the Eclipse Paho Python client (paho-mqtt 2.x), run by
the `ops::interop_with_paho_v311_and_v5` test against a broker on
127.0.0.1:PORT. Exits 0 when every check passes, non-zero with a message
otherwise. Every wait is bounded.

usage: python3 paho_interop.py PORT
"""

import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 5.0


class Client:
    def __init__(self, cid, protocol, clean=True, will=None):
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=protocol,
            clean_session=None if protocol == mqtt.MQTTv5 else clean,
        )
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.messages = []
        self.got = threading.Condition()
        self.reason = None
        self.session_present = None
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        if will:
            self.c.will_set(*will)
        self.clean = clean
        self.protocol = protocol

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.reason = reason_code
        self.session_present = flags.session_present
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self.got:
            self.messages.append(msg)
            self.got.notify_all()

    def connect(self, port, expiry=None):
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            if expiry is not None:
                props.SessionExpiryInterval = expiry
            self.c.connect("127.0.0.1", port, 30, clean_start=self.clean, properties=props)
        else:
            self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        check(self.connected.wait(WAIT), "CONNACK")
        check(not self.reason.is_failure, f"CONNACK refused: {self.reason}")
        return self

    def subscribe(self, topic, qos):
        self.subscribed.clear()
        self.c.subscribe(topic, qos)
        check(self.subscribed.wait(WAIT), f"SUBACK for {topic}")

    def wait_messages(self, n):
        with self.got:
            ok = self.got.wait_for(lambda: len(self.messages) >= n, WAIT)
        check(ok, f"{n} messages (got {len(self.messages)})")
        return self.messages

    def stop(self, clean=True):
        if clean:
            self.c.disconnect()
        self.c.loop_stop()


def check(ok, what):
    if not ok:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def main():
    port = int(sys.argv[1])
    for name, proto in [("v311", mqtt.MQTTv311), ("v5", mqtt.MQTTv5)]:
        # QoS 0/1/2 round trip with wildcard subscription.
        sub = Client(f"paho-sub-{name}", proto).connect(port)
        sub.subscribe(f"paho/{name}/+", 2)
        pub = Client(f"paho-pub-{name}", proto).connect(port)
        for qos in (0, 1, 2):
            pub.c.publish(f"paho/{name}/q{qos}", f"qos{qos}", qos=qos).wait_for_publish(WAIT)
        msgs = sub.wait_messages(3)
        got = sorted((m.topic, m.payload.decode(), m.qos) for m in msgs)
        want = [(f"paho/{name}/q{q}", f"qos{q}", q) for q in (0, 1, 2)]
        check(got == want, f"{name} deliveries {got}")

        # Retained message delivered to a later subscriber, with RETAIN set.
        pub.c.publish(f"paho/{name}/retained", "kept", qos=1, retain=True).wait_for_publish(WAIT)
        late = Client(f"paho-late-{name}", proto).connect(port)
        late.subscribe(f"paho/{name}/retained", 1)
        m = late.wait_messages(1)[0]
        check(m.retain and m.payload == b"kept", f"{name} retained")
        pub.c.publish(f"paho/{name}/retained", "", qos=1, retain=True).wait_for_publish(WAIT)

        # Will published when a client vanishes without DISCONNECT.
        watcher = Client(f"paho-watch-{name}", proto).connect(port)
        watcher.subscribe(f"paho/{name}/will", 1)
        doomed = Client(f"paho-doomed-{name}", proto, will=(f"paho/{name}/will", "bye", 1)).connect(port)
        doomed.c.loop_stop()
        doomed.c.socket().close()
        m = watcher.wait_messages(1)[0]
        check(m.payload == b"bye", f"{name} will")

        # Persistent session: messages published while away arrive on return.
        away = Client(f"paho-away-{name}", proto, clean=False).connect(port, expiry=300)
        away.subscribe(f"paho/{name}/away", 1)
        away.stop()
        pub.c.publish(f"paho/{name}/away", "queued", qos=1).wait_for_publish(WAIT)
        back = Client(f"paho-away-{name}", proto, clean=False).connect(port, expiry=300)
        check(back.session_present, f"{name} session present")
        m = back.wait_messages(1)[0]
        check(m.payload == b"queued", f"{name} queued message")
        for c in (sub, pub, late, watcher, back):
            c.stop()
    print("paho interop: ok")


if __name__ == "__main__":
    main()

// A TLS 1.3 peer that offers and accepts only the X25519MLKEM768 key exchange, from
// Go's crypto/tls (an implementation independent of ours; Go >= 1.24). It checks the
// key exchange, not identities (the Rust side verifies those).
//
//	go run main.go server CERT KEY        listens on 127.0.0.1, prints the port, then
//	                                      one JSON line for the connection it accepts
//	go run main.go client ADDR CERT KEY   connects and prints one JSON line
//
// The JSON line: {"group": "X25519MLKEM768", "alpn": "h2", "version": "TLS 1.3"} or
// {"error": "..."}.
package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	if len(os.Args) < 4 {
		fail("usage: main.go server CERT KEY | client ADDR CERT KEY")
	}
	switch os.Args[1] {
	case "server":
		serve(config(os.Args[2], os.Args[3]))
	case "client":
		if len(os.Args) < 5 {
			fail("usage: main.go client ADDR CERT KEY")
		}
		dial(os.Args[2], config(os.Args[3], os.Args[4]))
	default:
		fail("unknown mode " + os.Args[1])
	}
}

func config(cert, key string) *tls.Config {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		fail(err.Error())
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		// As a client, present the certificate whatever CAs the server names (as
		// ztunnel's rustls client does).
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil },
		MinVersion:           tls.VersionTLS13,
		CurvePreferences:     []tls.CurveID{tls.X25519MLKEM768},
		NextProtos:           []string{"h2"},
		ClientAuth:           tls.RequireAnyClientCert,
		InsecureSkipVerify:   true,
	}
}

func serve(cfg *tls.Config) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err.Error())
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	conn, err := ln.Accept()
	if err != nil {
		fail(err.Error())
	}
	c := tls.Server(conn, cfg)
	report(c)
	io.Copy(io.Discard, c)
	c.Close()
}

func dial(addr string, cfg *tls.Config) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		fail(err.Error())
	}
	c := tls.Client(conn, cfg)
	report(c)
	c.Close()
}

func report(c *tls.Conn) {
	if err := c.Handshake(); err != nil {
		emit(map[string]string{"error": err.Error()})
		return
	}
	st := c.ConnectionState()
	emit(map[string]string{"group": st.CurveID.String(), "alpn": st.NegotiatedProtocol, "version": tls.VersionName(st.Version)})
}

func emit(v map[string]string) {
	line, _ := json.Marshal(v)
	fmt.Println(string(line))
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(2)
}

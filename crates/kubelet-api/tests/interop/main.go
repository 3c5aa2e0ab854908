// Command interop drives the kubelet API's streaming endpoints with client-go's own clients (the
// code kubectl and the apiserver use), against a server the Rust test `go_client_go_interop`
// starts on loopback. Each check prints "ok <name>" or exits non-zero naming what differed.
//
// Usage: interop BASE_URL TOKEN CA_FILE ECHO_PORT
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/util/exec"
)

func main() {
	if len(os.Args) != 5 {
		fail("usage: interop BASE_URL TOKEN CA_FILE ECHO_PORT")
	}
	base, token, ca, echoPort := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	config := &restclient.Config{Host: base, BearerToken: token, TLSClientConfig: restclient.TLSClientConfig{CAFile: ca}}
	execURL := base + "/exec/shop/web-1/web?command=sh&command=-c&command=" +
		url.QueryEscape(`read line; echo "out:$line"; echo err >&2; exit 3`) + "&input=1&output=1&error=1"

	spdyExec, err := remotecommand.NewSPDYExecutor(config, "POST", mustURL(execURL))
	check(err)
	exitThree("exec over SPDY", spdyExec)

	wsExec, err := remotecommand.NewWebSocketExecutor(config, "GET", execURL)
	check(err)
	exitThree("exec over WebSocket v5", wsExec)

	wsV4Exec, err := remotecommand.NewWebSocketExecutorForProtocols(config, "GET", execURL, "v4.channel.k8s.io")
	check(err)
	exitThree("exec over WebSocket v4", wsV4Exec)

	v4Transport, v4Upgrader, err := spdy.RoundTripperFor(config)
	check(err)
	spdyV4Exec, err := remotecommand.NewSPDYExecutorForProtocols(v4Transport, v4Upgrader, "POST", mustURL(execURL), "v4.channel.k8s.io")
	check(err)
	exitThree("exec over SPDY v4", spdyV4Exec)

	pfURL := mustURL(base + "/portForward/shop/web-1")
	transport, upgrader, err := spdy.RoundTripperFor(config)
	check(err)
	forward("port-forward over SPDY", spdy.NewDialer(upgrader, &http.Client{Transport: transport}, "POST", pfURL), echoPort)

	tunnel, err := portforward.NewSPDYOverWebsocketDialer(pfURL, config)
	check(err)
	forward("port-forward over SPDY tunnelled in WebSocket", tunnel, echoPort)
}

func exitThree(name string, executor remotecommand.Executor) {
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := executor.StreamWithContext(ctx, remotecommand.StreamOptions{
		Stdin: strings.NewReader("hello\n"), Stdout: &stdout, Stderr: &stderr,
	})
	var exit exec.CodeExitError
	if !errors.As(err, &exit) || exit.Code != 3 {
		fail(fmt.Sprintf("%s: want exit code 3, got %v", name, err))
	}
	if stdout.String() != "out:hello\n" || stderr.String() != "err\n" {
		fail(fmt.Sprintf("%s: stdout %q stderr %q", name, stdout.String(), stderr.String()))
	}
	fmt.Println("ok", name)
}

// forward opens a client-go port-forward to the echo listener's port and sends three
// connections' worth of bytes through it at once, each more than a SPDY window.
func forward(name string, dialer httpstream.Dialer, port string) {
	stop, ready := make(chan struct{}), make(chan struct{})
	var out, errOut bytes.Buffer
	forwarder, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + port}, stop, ready, &out, &errOut)
	check(err)
	done := make(chan error, 1)
	go func() { done <- forwarder.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		fail(fmt.Sprintf("%s: %v %s", name, err, errOut.String()))
	}
	ports, err := forwarder.GetPorts()
	check(err)
	results := make(chan error, 3)
	for i := 0; i < 3; i++ {
		go func(i int) {
			payload := bytes.Repeat([]byte{byte('a' + i)}, 200*1024+i)
			conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local))
			if err != nil {
				results <- err
				return
			}
			defer conn.Close()
			go func() {
				_, _ = conn.Write(payload)
				_ = conn.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(conn)
			if err == nil && !bytes.Equal(got, payload) {
				err = fmt.Errorf("connection %d: %d bytes back of %d", i, len(got), len(payload))
			}
			results <- err
		}(i)
	}
	for i := 0; i < 3; i++ {
		if err := <-results; err != nil {
			fail(fmt.Sprintf("%s: %v %s", name, err, errOut.String()))
		}
	}
	close(stop)
	<-done
	fmt.Println("ok", name)
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	check(err)
	return u
}

func check(err error) {
	if err != nil {
		fail(err.Error())
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, message)
	os.Exit(1)
}

package controller

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// CacheOptions limits the manager's cache to what the controller reads:
// of all pods, only launcher pods are cached.
func CacheOptions() cache.Options {
	return cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {Label: labels.SelectorFromSet(labels.Set{v1alpha1.AppLabel: v1alpha1.AppLauncher})},
		},
	}
}

// Setup registers the VM and VMI reconcilers and the metrics with mgr.
func Setup(mgr ctrl.Manager, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return fmt.Errorf("controller metrics: %w", err)
	}
	vmi := &VMIReconciler{
		metrics:   m,
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("podvirt-controller"),
		Config:    &cfg,
	}
	if err := vmi.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up VMI controller: %w", err)
	}
	vm := &VMReconciler{
		metrics:   m,
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("podvirt-controller"),
		Config:    &cfg,
	}
	if err := vm.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up VM controller: %w", err)
	}
	return nil
}
